"""igpo: Information Gain-based Policy Optimization for multi-turn search agents."""

__version__ = "0.1.0"
