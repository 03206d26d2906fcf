from tokenseg.networks.tokenseg import TokenSeg, TokenSegAux

__all__ = ["TokenSeg", "TokenSegAux"]
