"""The only module that reads rank and world size: a frozen view of Ray Train's context."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    node_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_ray(cls) -> DistContext:
        import ray.train

        ctx = ray.train.get_context()
        return cls(ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank(), ctx.get_node_rank())

    @classmethod
    def single(cls) -> DistContext:
        return cls(0, 1, 0, 0)
