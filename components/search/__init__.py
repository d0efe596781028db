from components.search.component import search

__all__ = ["search"]
