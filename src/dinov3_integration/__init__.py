"""dinov3-integration: DINOv3 vision transformers as an exact, drop-in backbone for multi-frame 3D models."""

__version__ = "0.1.0"

from .models import DinoVisionTransformer, create_model, list_models, model_info  # noqa: E402

__all__ = ["DinoVisionTransformer", "__version__", "create_model", "list_models", "model_info"]
