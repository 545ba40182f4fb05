"""The Discord adapter (discord.py 2.x): thin handlers over the platform-free core."""
