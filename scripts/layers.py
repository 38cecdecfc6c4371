#!/usr/bin/env python3
"""The import graph of a crate's top-level modules: no circle, no import
that runs back up a layer.

A module is a top-level file (`src/config.rs`) or folder (`src/store/`);
everything under a folder is that module (a folder's files may use each
other freely). An edge A -> B is any `crate::B` path in A's files (in `use`
lines and inline) or a `super::` that leaves A. Test code (`#[cfg(test)]`
blocks at the end of a file) counts too, except that `crate::testkit` is
allowed from tests.

Layers are listed lowest first in LAYERS below; a module may import its
own layer's modules and any lower layer's, never a higher one's, and the
graph must have no circle. Exit 1 with the offending imports, each with
its file and line.

Usage: scripts/layers.py [CRATE_SRC ...]   (default: engine/src gateway/src)
"""

import os
import re
import sys
from collections import defaultdict

# Lowest first. Every top-level module of a crate must be named here, so a
# new module has to be given its place.
LAYERS = {
    "engine/src": [
        # domain types and pure rules (ids, money, seats, orders, packets,
        # payments, domain events, time); expected failures; configuration
        # and its limits; metrics; running Redis commands across slots.
        {"domain", "error", "config", "telemetry", "redis_io"},
        # Idempotency-Key records (a trait both stores implement).
        {"idempotency"},
        # the hot store: trait, memory and Redis implementations, the Lua
        # scripts' Rust twins, the embedded store's SQLite file.
        {"store"},
        # the event logs over the outbox (hot.db, Redis streams, Kafka);
        # the durable store.
        {"events", "durable"},
        # payment channels: wire formats, sandboxes, the registry.
        {"pay"},
        # read models; the actors over the hot store; recovery of a lost
        # Redis; reconciliation.
        {"views", "actors", "recovery", "reconcile"},
        # background workers, each on the narrow handles it is given.
        {"workers"},
        # use cases, one file per capability.
        {"engine"},
        # wiring: builds a node for its mode, starts and stops it.
        {"node"},
        # scratch databases for tests.
        {"testkit"},
        # the crate root re-exports.
        {"lib"},
    ],
    "gateway/src": [
        # the error mapping, logs and traces, rate limits, bearer tokens,
        # live update streams, what every handler shares.
        {"error", "telemetry", "limits", "auth", "push", "state"},
        # request and response bodies; Idempotency-Key replay; what every
        # request passes through.
        {"dto", "idempotency", "middleware"},
        # handlers by resource.
        {"routes"},
        # the contract generated from the handlers.
        {"openapi"},
        # the apps: routes and middleware put together.
        {"app"},
        # running a node's server; the shutdown protocol.
        {"serve"},
        # the other subcommands.
        {"commands"},
        # the crate root and the binary.
        {"lib", "main"},
    ],
}

PATH_RE = re.compile(r"\bcrate::([A-Za-z_][A-Za-z0-9_]*)")
ROOT_ITEM_RE = re.compile(r"^pub (?:struct|enum|fn|trait|type|const|static) ([A-Za-z_][A-Za-z0-9_]*)", re.M)
USE_GROUP_RE = re.compile(r"\buse\s+crate::\{([^;]*)\}", re.S)
SUPER_RE = re.compile(r"\bsuper::(?:super::)*([a-z_][a-z0-9_]*)")


def top_module(src, path):
    rel = os.path.relpath(path, src)
    parts = rel.split(os.sep)
    name = parts[0]
    if name.endswith(".rs"):
        name = name[:-3]
    return name


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(re.sub(r"//.*$", "", line) for line in text.split("\n"))


def edges_of(src):
    edges = defaultdict(list)  # (from, to) -> [(file, line)]
    modules = set()
    # Items the crate root defines itself (not its `pub use`s): `crate::X`
    # for one of them is an import of `lib`.
    # A name the root re-exports (`pub use engine::{Caller, Engine}`)
    # stands for the module it comes from.
    with open(os.path.join(src, "lib.rs"), encoding="utf-8") as fh:
        root = strip_comments(fh.read())
    aliases = {name: "lib" for name in ROOT_ITEM_RE.findall(root)}
    for m in re.finditer(r"^pub use ([a-z_][a-z0-9_]*)::(\{[^}]*\}|[A-Za-z_][A-Za-z0-9_]*);", root, re.M):
        for name in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", m.group(2)):
            aliases[name] = m.group(1)
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            me = top_module(src, path)
            modules.add(me)
            with open(path, encoding="utf-8") as fh:
                raw = fh.read()
            text = strip_comments(raw)
            for lineno, line in enumerate(text.split("\n"), 1):
                targets = set(PATH_RE.findall(line))
                for m in SUPER_RE.finditer(line):
                    # `super::` from a folder's file stays in the folder
                    # unless it climbs past the folder's top.
                    depth = m.group(0).count("super::")
                    rel_dir = os.path.dirname(os.path.relpath(path, src))
                    levels = len(rel_dir.split(os.sep)) if rel_dir else 0
                    if f == "mod.rs":
                        levels -= 1
                    if depth > levels:
                        targets.add(m.group(1))
                for t in targets:
                    t = aliases.get(t, t)
                    if t != me:
                        edges[(me, t)].append((path, lineno))
            for m in USE_GROUP_RE.finditer(text):
                lineno = text[: m.start()].count("\n") + 1
                for item in re.split(r",", m.group(1)):
                    item = item.strip().split("::")[0].strip("{} \n")
                    item = aliases.get(item, item)
                    if item and item not in ("self",) and item != me:
                        edges[(me, item)].append((path, lineno))
    return modules, edges


def circles(nodes, graph):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            strong(v)
    return out


def check(src):
    layers = LAYERS[src]
    rank = {}
    for i, layer in enumerate(layers):
        for m in layer:
            rank[m] = i
    modules, edges = edges_of(src)
    problems = []
    for m in sorted(modules):
        if m not in rank:
            problems.append(f"{src}: module `{m}` has no layer in scripts/layers.py")
    graph = defaultdict(set)
    for (a, b), where in sorted(edges.items()):
        if b not in modules:
            continue  # an external crate's path, or a macro's
        if a == "testkit" or b == "testkit":
            continue
        graph[a].add(b)
        if a in rank and b in rank and rank[b] > rank[a]:
            for path, line in where:
                problems.append(f"{path}:{line}: `{a}` imports `{b}`, a higher layer")
    for comp in circles(modules, graph):
        problems.append(f"{src}: circle between {', '.join(comp)}")
    return problems


def main():
    srcs = sys.argv[1:] or ["engine/src", "gateway/src"]
    problems = []
    for src in srcs:
        problems += check(src)
    for p in problems:
        print(p)
    if problems:
        print(f"layers: {len(problems)} problem(s)")
        return 1
    print(f"layers: {', '.join(srcs)}: no circle, no import up a layer")
    return 0


if __name__ == "__main__":
    sys.exit(main())
