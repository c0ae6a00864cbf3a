"""Whether an ONNX graph answers the same input the same way every time: what decides whether Triton's
response cache may serve it (``core.triton_config.RANDOM_OPS``; docs/converters.md, "Response cache")."""

from __future__ import annotations

from pathlib import Path

from core.triton_config import RANDOM_OPS


def random_ops(model_path: str | Path) -> list[str]:
    """The random operators of the graph in ``model_path``, its subgraphs (If, Loop, Scan) included, and
    every ``Dropout`` that is told to train (a third input given): the graph is deterministic when this
    is empty. Exported in eval mode, our models have none."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    found: list[str] = []

    def walk(graph) -> None:
        for node in graph.node:
            if node.op_type in RANDOM_OPS:
                found.append(node.op_type)
            elif node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]:
                found.append("Dropout(training_mode)")
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    walk(attribute.g)
                for sub in attribute.graphs:
                    walk(sub)

    walk(model.graph)
    return found
