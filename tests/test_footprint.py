"""What a plain agent (no key, no RPC auth, no systemd) loads: none of the modules it
never needs, each a share of its RSS (OpenSSL's libssl and libcrypto through ssl and
hashlib, the cryptography bindings, bz2/lzma through shutil, ...)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support import free_port, write_base

UNNEEDED = ("ssl", "_ssl", "_hashlib", "hmac", "secrets", "cryptography", "shutil",
            "tempfile", "bz2", "lzma", "difflib", "tomli_w", "fractions", "decimal",
            "platform", "prometheus_client",
            "zeroconf", "ifaddr")  # the last two: only with discover/interface

# ``python -m serfd`` as it runs, stopped once it is started: what is loaded by then.
SCRIPT = textwrap.dedent("""
    import json, sys
    import serfd.__main__ as entry
    from serfd.agent.agent import Agent

    async def run(self):
        await self.start()
        loaded = sorted(m for m in {unneeded!r} if sys.modules.get(m) is not None)
        await self._shutdown()
        print(json.dumps(loaded))
        return 0

    Agent.run = run
    sys.exit(entry.main(["--config-dir", {config_dir!r}]))
""")


def test_a_plain_agent_loads_nothing_it_does_not_need(tmp_path: Path) -> None:
    d = tmp_path / "serfd.d"
    write_base(d, tmp_path, free_port(), log_level='"warn"')
    script = SCRIPT.format(unneeded=UNNEEDED, config_dir=str(d))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
