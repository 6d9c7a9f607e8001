"""List command mode's MCP tools and run the example's `hello` executor through them.

    ANPX_COMMAND_TOKEN=$(cat token.txt) python mcp_client.py http://127.0.0.1:8080/mcp /tmp/anpx-projects

Needs the MCP SDK: python -m pip install 'anpx[mcp]'.
"""

import os
import sys

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


async def main(url: str, project: str) -> None:
    headers = {"Authorization": f"Bearer {os.environ['ANPX_COMMAND_TOKEN']}"}
    http = httpx2.AsyncClient(headers=headers, timeout=30)
    async with http, Client(streamable_http_client(url, http_client=http)) as client:
        tools = await client.list_tools()
        print("tools:", ", ".join(sorted(t.name for t in tools.tools)))
        started = await client.call_tool(
            "start_session",
            {
                "executor": "hello",
                "prompt": "hi over MCP",
                "project_path": project,
            },
        )
        session_id = started.structured_content["id"]
        offset = 0
        while True:
            out = await client.call_tool(
                "read_output", {"session_id": session_id, "offset": offset, "wait_seconds": 10}
            )
            print(out.structured_content["text"], end="")
            offset = out.structured_content["next_offset"]
            if out.structured_content["complete"]:
                print("exit code:", out.structured_content["exit_code"])
                return


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2])
