"""Where backends run: execution slots on this machine (``local``)."""

from squishy.cluster.local import SlotLayout, available_cores, slot_layout

__all__ = ["SlotLayout", "available_cores", "slot_layout"]
