from tokenseg.networks import interactive
from tokenseg.networks.tokenseg import TokenSeg, TokenSegOutput

__all__ = ["TokenSeg", "TokenSegOutput", "interactive"]
