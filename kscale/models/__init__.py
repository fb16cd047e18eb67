"""Model families (size tables, quantized-module filters), checkpoint resolution and loading."""
from __future__ import annotations

from kscale.models.family import (
    FAMILIES,
    PROVIDERS,
    CheckpointProvider,
    ModelFamily,
    get_family,
    import_plugins,
)
from kscale.models.loading import (
    LoadedModel,
    ModelConfigError,
    ModelSpec,
    count_params,
    load_model,
    model_context,
    prepare_models,
    resolve_models,
)

__all__ = [
    "FAMILIES", "PROVIDERS", "CheckpointProvider", "ModelFamily", "get_family", "import_plugins",
    "LoadedModel", "ModelConfigError", "ModelSpec", "count_params", "load_model", "model_context",
    "prepare_models", "resolve_models",
]
