from components.build.component import build

__all__ = ["build"]
