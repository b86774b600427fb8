"""Putting babygpt_ext's fused attention into models it did not build, in place, and taking it out again.

    report = babygpt_ext.patch(model)      # nanoGPT-style modules replaced (nanogpt.py), or a Hugging Face
    print(report)                          # model switched through its attention registry (hf.py)
    babygpt_ext.unpatch(model)

report.py holds the PatchReport both kinds return.
"""

from .nanogpt import patch, unpatch
from .report import PatchReport

__all__ = ["patch", "unpatch", "PatchReport"]
