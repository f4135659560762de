"""InstructGPT's data side: the instruction suite, real demonstration and comparison data, prompt
splits, the chat template and the simulated labeler. No torch and no training code here, so the
labeler can be the gold judge of every model."""
