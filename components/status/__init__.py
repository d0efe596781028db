from components.status.component import run_status

__all__ = ["run_status"]
