"""One STUN Binding with aiostun: `python aiostun_binding.py PROTO HOST PORT
LOCAL_ADDR` (PROTO: tcp or tls). Prints the XOR-MAPPED-ADDRESS the server
answered and the client's own address as one JSON line; exits 1 without an
answer."""

import asyncio
import json
import sys

import aiostun


async def main():
    proto, host, port, local = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    ipproto = {"tcp": aiostun.TCP, "tls": aiostun.TLS}[proto]
    client = aiostun.Client(host=host, port=port, proto=ipproto, timeout=5, local_addr=local, local_port=0)
    await client.connect()
    try:
        mine = client.get_local_addr()
        mapped = await asyncio.wait_for(client.get_mapped_address(), timeout=5)
    finally:
        client.close()
    if not mapped:
        print(json.dumps({"error": "no answer"}))
        sys.exit(1)
    print(json.dumps({"mapped": mapped, "local": mine}))


asyncio.run(main())
