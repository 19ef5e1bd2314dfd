#!/usr/bin/env python3
"""The chart's README from its values.yaml: every key with its default and the comment above it.

The values file is the one source: `make chart` fails when README.md is not what this prints
(`--check`), so a new knob is documented where it is defined. Run without flags to rewrite it.
"""
import re
import sys
from pathlib import Path

CHART = Path(__file__).resolve().parent.parent / "ssekeeper"
HEAD = """# ssekeeper

The operator and sidecar that let a Server-Sent Events service run many replicas and roll them
without losing an event or a session. See the project README for what it does, the `SseService`
reference, upgrades, monitoring and uninstalling.

```sh
helm install ssekeeper charts/ssekeeper -n ssekeeper-system --create-namespace
kubectl apply -f examples/chat.yaml
kubectl wait --for=condition=Ready ssesvc/chat
```

## Values

Generated from `values.yaml` by `charts/tools/values-readme.py` (`make chart` checks it).

| key | default | what it is for |
| --- | --- | --- |
"""


def rows(text):
    stack, comment = [], []
    for line in text.splitlines():
        if not line.strip():
            comment = []
            continue
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("#").strip())
            continue
        m = re.match(r"([A-Za-z][\w.-]*):\s*(.*)$", stripped)
        if not m or stripped.startswith("- "):
            comment = []
            continue
        key, value = m.group(1), m.group(2).strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [key])
        if value == "":
            stack.append((indent, key))
            if comment:
                yield path, "", " ".join(comment)
        else:
            yield path, value, " ".join(comment)
        comment = []


def render():
    values = (CHART / "values.yaml").read_text()
    out = [HEAD]
    for path, default, doc in rows(values):
        default = f"`{default}`" if default else ""
        cells = [f"`{path}`", default, doc]
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |\n")
    return "".join(out)


if __name__ == "__main__":
    readme = CHART / "README.md"
    text = render()
    if "--check" in sys.argv:
        if not readme.exists() or readme.read_text() != text:
            sys.exit("charts/ssekeeper/README.md is not generated from values.yaml: run "
                     "python3 charts/tools/values-readme.py")
    else:
        readme.write_text(text)
