"""What XLA says about a compiled program (FLOPs, memory): shared by `s4mi_jax.aot` and the benchmark."""

from __future__ import annotations

from typing import Any


def compiled_stats(compiled: Any) -> dict:
    """XLA's cost and memory analysis of a compiled program: `flops_per_device` (-1 if the backend
    gives none) and, where available, argument/output/alias/temp bytes and their peak estimate."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost  # Older jax: one dict per program.
    out = {"flops_per_device": float(cost.get("flops", -1.0)) if cost else -1.0}
    mem = compiled.memory_analysis()
    if mem is not None:
        out.update(
            argument_bytes=int(mem.argument_size_in_bytes),
            output_bytes=int(mem.output_size_in_bytes),
            alias_bytes=int(mem.alias_size_in_bytes),
            temp_bytes=int(mem.temp_size_in_bytes),
            generated_code_bytes=int(mem.generated_code_size_in_bytes),
        )
        # Donated state aliases its output: peak ~ inputs + new outputs + scratch.
        out["peak_bytes_per_device"] = (
            out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"] + out["temp_bytes"]
        )
    return out
