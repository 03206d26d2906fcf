"""Every benchmark of TokenSeg against MONAI's networks, beside the library (``import tokenseg`` never loads them).

Run from the repository root: ``python -m benchmarks.<name>`` (``cost``, ``accuracy``, ``learning``,
``clicks``, ``annotation_loop``, ``kept_compute``, ``kept_flops``, ``profile``, ``components``, ``measure``).
Their own dependencies are the ``[bench]`` extra.
"""
