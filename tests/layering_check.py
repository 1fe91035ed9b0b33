#!/usr/bin/env python3
"""Checks kvring's layering from the #include lines (run by ctest).

Every file of a layer lives in include/kvring/<layer>/ or src/<layer>/ (the
base layer: include/kvring/status.h, src/status.cc). A file may include the
headers of its own layer and of the layers it may use, and nothing else of
kvring's. The allowed edges are read from the CMake library targets
(CMakeLists.txt, kvring_layer(<name> USES ...)), so the link edges and this
check cannot disagree; the closure is taken, as a link dependency gives its
own dependencies' headers too.

Usage: layering_check.py <repository root>      exit 0 clean, 1 violations
       layering_check.py --self-test            the checker catches a planted violation
"""
import os
import re
import sys
import tempfile

KEYWORDS = {"SOURCES", "USES", "PUBLIC_LIBS", "PRIVATE_LIBS"}


def uses_from_cmake(text):
    """The layers and their allowed edges, from kvring_layer(<name> USES ...)
    calls in CMakeLists.txt: the build's link edges are the one source."""
    uses = {}
    for m in re.finditer(r"kvring_layer\(([^)]*)\)", text):
        words = m.group(1).split()
        name, edges, key = words[0], [], None
        for w in words[1:]:
            if w in KEYWORDS:
                key = w
            elif key == "USES":
                edges.append(w)
        uses[name] = edges
    return uses


USES = {}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def closure(layer):
    seen, todo = set(), [layer]
    while todo:
        l = todo.pop()
        if l not in seen:
            seen.add(l)
            todo.extend(USES[l])
    return seen


def layer_of_file(rel):
    """The layer a file of the tree belongs to, or None (tools, tests, ...)."""
    parts = rel.split("/")
    if rel in ("include/kvring/status.h", "src/status.cc"):
        return "base"
    if len(parts) >= 4 and parts[0] == "include" and parts[1] == "kvring" and parts[2] in USES:
        return parts[2]
    if len(parts) >= 3 and parts[0] == "src" and parts[1] in USES:
        return parts[1]
    return None


def layer_of_include(path):
    """The layer of an included path: "kvring/<layer>/x.h", "kvring/status.h" or a
    private header "<layer>/x.h" (src/ is on the include path)."""
    if path == "kvring/status.h":
        return "base"
    parts = path.split("/")
    if len(parts) >= 3 and parts[0] == "kvring" and parts[1] in USES:
        return parts[1]
    if len(parts) >= 2 and parts[0] in USES:
        return parts[0]
    if parts[0] == "kvring":
        return "?"  # a kvring header outside every layer
    return None


def check(root):
    problems = []
    for top in ("include", "src"):
        for dirpath, _, names in os.walk(os.path.join(root, top)):
            for n in names:
                if not n.endswith((".h", ".cc")):
                    continue
                full = os.path.join(dirpath, n)
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                mine = layer_of_file(rel)
                if mine is None:
                    problems.append(f"{rel}: not in any layer's folder")
                    continue
                allowed = closure(mine)
                with open(full, encoding="utf-8") as f:
                    text = f.read()
                for inc in INCLUDE.findall(text):
                    theirs = layer_of_include(inc)
                    if theirs is None:
                        continue
                    if theirs == "?":
                        problems.append(f"{rel}: includes {inc}, which is in no layer")
                    elif theirs not in allowed:
                        problems.append(f"{rel} ({mine}) includes {inc} ({theirs}): "
                                        f"{mine} may use only {sorted(allowed)}")
    return problems


def self_test():
    with tempfile.TemporaryDirectory() as root:
        def put(rel, text):
            os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
            with open(os.path.join(root, rel), "w") as f:
                f.write(text)
        put("include/kvring/status.h", "")
        put("include/kvring/index/index.h", '#include "kvring/status.h"\n')
        put("src/client/client.cc", '#include "kvring/shm/ring.h"\n#include "kvring/protocol/codec.h"\n')
        assert check(root) == [], check(root)
        put("src/index/index.cc", '#include "kvring/controller/controller.h"\n')  # index may not use controller
        put("src/shm/ring.cc", '#include "protocol/traits.h"\n')  # nor shm protocol's private headers
        put("include/kvring/stray.h", "")
        found = check(root)
        assert any("src/index/index.cc (index) includes kvring/controller/controller.h" in p for p in found), found
        assert any("src/shm/ring.cc (shm) includes protocol/traits.h" in p for p in found), found
        assert any("include/kvring/stray.h: not in any layer" in p for p in found), found
    print("layering check: self-test passed")
    return 0


def main():
    global USES
    if sys.argv[1:] == ["--self-test"]:
        USES = uses_from_cmake("""
          kvring_layer(base SOURCES src/status.cc)
          kvring_layer(protocol USES base SOURCES x.cc PUBLIC_LIBS y)
          kvring_layer(shm USES base SOURCES a.cc)
          kvring_layer(index USES base SOURCES b.cc)
          kvring_layer(controller USES protocol shm index SOURCES c.cc PRIVATE_LIBS z)
          kvring_layer(client USES protocol shm SOURCES d.cc)""")
        assert USES["controller"] == ["protocol", "shm", "index"] and USES["base"] == [], USES
        return self_test()
    with open(os.path.join(sys.argv[1], "CMakeLists.txt"), encoding="utf-8") as f:
        USES = uses_from_cmake(f.read())
    if not {"base", "protocol", "shm", "index", "controller", "client"} <= USES.keys():
        print(f"layering check: CMakeLists.txt declares layers {sorted(USES)}; expected at least the six")
        return 1
    problems = check(sys.argv[1])
    for p in problems:
        print(p)
    if not problems:
        print("layering check: every include follows the layers")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
