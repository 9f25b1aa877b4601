"""Datasheet memory bandwidth of common GPUs, for `ladle bench latency`'s roofline when --peak-bandwidth-gbs
is not given. Matched on torch.cuda.get_device_name(); a GPU not listed gets no roofline rather than a guess."""

from __future__ import annotations

# (words that must all appear in the upper-cased device name, GB/s). First match wins, so a variant comes
# before the plain name it contains (H100 PCIe before H100; A100 before A10).
_DATASHEET_GBS: list[tuple[tuple[str, ...], float | None]] = [
    (("H100", "PCIE"), 2000.0),
    (("H100", "NVL"), 3900.0),
    (("GH200",), None),  # two memory options (HBM3 4.0, HBM3e 4.9 TB/s) under one name: no guess
    (("H100",), 3350.0),  # SXM5, HBM3 ("NVIDIA H100 80GB HBM3")
    (("H200",), 4800.0),
    (("B200",), 8000.0),
    (("A100", "40GB"), 1555.0),
    (("A100", "PCIE"), 1935.0),  # the 80 GB PCIe card (the 40 GB ones matched above)
    (("A100",), 2039.0),  # SXM4 80 GB
    (("L40S",), 864.0),
    (("L4",), 300.0),
    (("A10",), 600.0),
    (("RTX 4090",), 1008.0),
]


def datasheet_bandwidth_gbs(device_name: str) -> float | None:
    """The device's datasheet memory bandwidth in GB/s, or None when it is not known here."""
    name = device_name.upper()
    for words, gbs in _DATASHEET_GBS:
        if all(_has_word(name, w) for w in words):
            return gbs
    return None


def _has_word(name: str, word: str) -> bool:
    # "L4" must not match "L40S", nor "A10" "A100", nor "H200" "GH200": no letter or digit on either side.
    start = name.find(word)
    while start >= 0:
        end = start + len(word)
        before_ok = start == 0 or not name[start - 1].isalnum()
        if before_ok and (end == len(name) or not name[end].isalnum()):
            return True
        start = name.find(word, start + 1)
    return False
