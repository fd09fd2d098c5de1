"""The agent: chat format and probe, parsing of generations, tools, trajectories and the rollout loop."""

from igpo.agent.parsing import Action, parse_generation
from igpo.agent.template import ChatFormat
from igpo.agent.tools import SearchTool, Tool, Toolbox, ToolResult
from igpo.agent.trajectory import Trajectory, Turn

__all__ = [
    "Action",
    "ChatFormat",
    "SearchTool",
    "Tool",
    "ToolResult",
    "Toolbox",
    "Trajectory",
    "Turn",
    "parse_generation",
]
