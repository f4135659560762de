"""The file MLflow runs to build a registered GPT model (models from code: no pickle)."""

import mlflow.models

from pipeline.model.pyfunc import GPTGenerator

mlflow.models.set_model(GPTGenerator())
