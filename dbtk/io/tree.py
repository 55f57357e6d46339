"""Nested state (dicts, lists, tensors, numbers) as safetensors tensors + JSON text — no pickle anywhere.

``flatten`` turns the state into (tensors, JSON text) for a safetensors file; ``unflatten`` reverses it. Nested
dicts and lists are walked; tensors become entries keyed by their path, everything else stays in the JSON
tree with a ``{"__tensor__": key}`` placeholder where a tensor was.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

PREFIX = "train_state/"


def flatten(tree: Any) -> tuple[dict[str, torch.Tensor], str]:
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, torch.Tensor):
            key = PREFIX + path
            tensors[key] = node.detach().to("cpu").contiguous()
            return {"__tensor__": key}
        if isinstance(node, dict):
            return {"__dict__": [[walk(k, f"{path}.k{i}"), walk(v, f"{path}.{i}")] for i, (k, v) in enumerate(node.items())]}
        if isinstance(node, (list, tuple)):
            items = [walk(v, f"{path}.{i}") for i, v in enumerate(node)]
            return {"__tuple__": items} if isinstance(node, tuple) else items
        if isinstance(node, np.ndarray):
            return {"__ndarray__": node.tolist(), "dtype": str(node.dtype)}
        if isinstance(node, (np.integer, np.floating)):
            return node.item()
        return node

    return tensors, json.dumps(walk(tree, "root"))


def unflatten(tensors: dict[str, torch.Tensor], text: str) -> Any:
    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "__tensor__" in node:
                return tensors[node["__tensor__"]]
            if "__dict__" in node:
                return {walk(k): walk(v) for k, v in node["__dict__"]}
            if "__tuple__" in node:
                return tuple(walk(v) for v in node["__tuple__"])
            if "__ndarray__" in node:
                return np.asarray(node["__ndarray__"], dtype=node["dtype"])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(json.loads(text))
