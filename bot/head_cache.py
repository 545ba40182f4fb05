"""The trained heads kept in memory: at most one per person (the one that scores their
images), for the people who sent something most recently.

A head holds the person's images as anchors (up to 2,000 x 512 float32, ~4 MB, and as much
again of smoothed features), and a person is retrained every few votes. Keyed by model
version, every retrain, promoted or rejected, stayed in memory until the process ended.
"""

from __future__ import annotations

from collections import OrderedDict

from learner.head import TasteHead


class HeadCache:
    """Least recently used, keyed by person; a person's entry names its model version."""

    def __init__(self, max_people: int) -> None:
        if max_people < 1:
            raise ValueError(f"max_people must be >= 1, got {max_people}")
        self.max_people = max_people
        self._entries: OrderedDict[int, tuple[int, TasteHead]] = OrderedDict()

    def get(self, user_id: int, model_id: int) -> TasteHead | None:
        """The person's head if the cached one is version ``model_id``, else None."""
        entry = self._entries.get(user_id)
        if entry is None or entry[0] != model_id:
            return None
        self._entries.move_to_end(user_id)
        return entry[1]

    def put(self, user_id: int, model_id: int, head: TasteHead) -> None:
        """Cache ``head`` as the person's, replacing their previous one."""
        self._entries[user_id] = (model_id, head)
        self._entries.move_to_end(user_id)
        while len(self._entries) > self.max_people:
            self._entries.popitem(last=False)

    def forget(self, user_id: int) -> None:
        self._entries.pop(user_id, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def model_ids(self) -> dict[int, int]:
        """person -> cached model version id (for logs and tests)."""
        return {user_id: model_id for user_id, (model_id, _) in self._entries.items()}
