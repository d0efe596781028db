from components.surrogate.component import surrogate

__all__ = ["surrogate"]
