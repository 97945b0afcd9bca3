"""A real PostgreSQL server for the tests, on a free loopback port, started and stopped by them.

It uses the server binaries of Debian's `postgresql` package (/usr/lib/postgresql/<version>/bin,
not on PATH); `.ci/run` installs them. `initdb` refuses to run as root, so as root the cluster
belongs to the `postgres` user the package creates: its folder is made under /tmp and given to
that user, and initdb and pg_ctl run as it through `runuser`. Clients connect over TCP with a
password, as facepipe's users do.
"""

import glob
import os
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

USER = "facepipe"
# a password with characters a URL must escape, so the tests use the URL form users write
PASSWORD = "s3cret@pg/1"


def server_bin() -> Path | None:
    """The newest installed PostgreSQL server's bin folder, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def why_not_available() -> str | None:
    """Why no server can be started here (the reason a test skips with), or None."""
    if server_bin() is None:
        return "PostgreSQL's server is not installed (Debian: apt-get install postgresql; .ci/run does it)"
    if os.geteuid() == 0 and (shutil.which("runuser") is None or _uid("postgres") is None):
        return "running as root, and there is no `postgres` user and runuser to run initdb as"
    try:
        import dagster_postgres  # noqa: F401
    except ImportError:
        return 'dagster-postgres is not installed (pip install -e ".[postgres]")'
    return None


def _uid(name: str) -> int | None:
    import pwd

    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


@dataclass
class PostgresServer:
    port: int
    bin: Path
    start_seconds: float

    def url(self, database: str) -> str:
        """The URL as facepipe's users write it: postgresql://user:password@host:port/database."""
        return f"postgresql://{USER}:{quote(PASSWORD, safe='')}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        env = {**os.environ, "PGPASSWORD": PASSWORD}
        subprocess.run(
            [self.bin / "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, name],
            env=env,
            check=True,
            capture_output=True,
        )
        return self.url(name)

    def query(self, database: str, sql: str) -> list[tuple]:
        import psycopg2

        with psycopg2.connect(host="127.0.0.1", port=self.port, user=USER, password=PASSWORD, dbname=database) as conn:
            with conn.cursor() as cursor:
                cursor.execute(sql)
                return cursor.fetchall()


@contextmanager
def postgres_server():
    """Start a throwaway cluster on a free loopback port; yield a PostgresServer; stop and delete it."""
    from facepipe_tests.conftest import free_port

    bin_dir = server_bin()
    as_postgres = os.geteuid() == 0
    run_as = ["runuser", "-u", "postgres", "--"] if as_postgres else []
    root = Path(tempfile.mkdtemp(prefix="facepipe-pg-"))
    data, password_file, log = root / "data", root / "password", root / "server.log"
    password_file.write_text(PASSWORD + "\n")
    if as_postgres:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(password_file, "postgres", "postgres")
    port = free_port()
    started = time.perf_counter()
    try:
        try:
            subprocess.run(
                [
                    *run_as,
                    bin_dir / "initdb",
                    "-D",
                    data,
                    "-U",
                    USER,
                    "--pwfile",
                    password_file,
                    "--auth-host=scram-sha-256",
                    "--auth-local=trust",
                    "--no-sync",
                ],
                check=True,
                capture_output=True,
            )
            # the socket in the cluster's folder: /var/run/postgresql may not exist or be writable
            options = f"-c listen_addresses=127.0.0.1 -p {port} -k {data}"
            subprocess.run(
                [*run_as, bin_dir / "pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "-t", "60", "start"],
                check=True,
                capture_output=True,
            )
        except subprocess.CalledProcessError as err:
            server_log = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{err.cmd[len(run_as)]} failed:\n{err.stderr.decode()[-2000:]}\n{server_log}") from err
        yield PostgresServer(port=port, bin=bin_dir, start_seconds=time.perf_counter() - started)
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*run_as, bin_dir / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
