"""Write target files from line ranges of a source file (used once per split; deleted after)."""
import sys, json
from pathlib import Path
spec = json.loads(Path(sys.argv[1]).read_text())
src = Path(spec["source"]).read_text().splitlines(keepends=True)
for target, parts in spec["targets"].items():
    out = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
        else:
            a, b = part
            out.append("".join(src[a - 1 : b]))
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    Path(target).write_text("".join(out))
