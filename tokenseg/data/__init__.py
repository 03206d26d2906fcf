from tokenseg.data import checks, datalist, demo, synthetic

__all__ = ["checks", "datalist", "demo", "synthetic"]
