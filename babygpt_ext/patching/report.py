"""What patch()/unpatch() did, as a list of the changed attention modules' names plus the rest.

    report = babygpt_ext.patch(model)
    report                  # ['transformer.h.0.attn', ...]: the modules now on our attention
    report.left             # [(name, why), ...]: attention-like modules left as they were
    report.notes            # calls that still take another path at run time (e.g. dropout)
    print(report)           # a short summary of all three
"""

import warnings
from typing import Optional


class PatchReport(list):
    def __init__(self, action: str, names=(), left=(), notes=(), backend: Optional[str] = None,
                 nothing_to_do: Optional[str] = None):
        super().__init__(names)
        self.action, self.backend = action, backend
        self.left, self.notes = list(left), list(notes)
        self.nothing_to_do = nothing_to_do  # why the call changed nothing (None when it changed something)

    def __str__(self) -> str:
        if self.nothing_to_do is not None:
            lines = [f"{self.action}: nothing to do: {self.nothing_to_do}"]
        else:
            verb = "now run babygpt_ext's attention" if self.action == "patch" else "run their own attention again"
            how = "the automatic policy" if self.backend is None else repr(self.backend)
            lines = [f"{self.action}: {len(self)} attention module(s) {verb}"
                     + (f" (backend: {how})" if self.action == "patch" else "") + f": {', '.join(self)}"]
        lines += [f"  left {name}: {why}" for name, why in self.left]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    def warn_if_worth_it(self) -> "PatchReport":
        """A no-op, or modules left unpatched, are said out loud; a clean patch stays quiet."""
        if self.nothing_to_do is not None or self.left:
            warnings.warn(f"babygpt_ext.{self}", RuntimeWarning, stacklevel=3)
        return self
