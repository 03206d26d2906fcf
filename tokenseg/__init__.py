"""TokenSeg: boundary-aware sparse token 3D medical image segmentation for MONAI."""

__version__ = "0.10.0"

# Submodules are imported so that bundle configs can write `tokenseg.data.datalist.load_datalist(...)`
# after a plain `import tokenseg`.
from tokenseg import (  # noqa: E402
    boundary,
    clicks,
    data,
    handlers,
    inferers,
    interaction,
    losses,
    metrics,
    networks,
    transforms,
    uncertainty,
)

__all__ = [
    "boundary", "clicks", "data", "handlers", "inferers", "interaction", "losses", "metrics", "networks",
    "transforms", "uncertainty",
]
