"""The faces: Invoke tasks, the fleet program, dx-dispatch, MCP, renderers."""
