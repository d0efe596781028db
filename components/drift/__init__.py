from components.drift.component import drift

__all__ = ["drift"]
