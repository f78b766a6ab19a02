"""tts-cache-proxy: a drop-in caching reverse proxy for text-to-speech APIs."""

__version__ = "0.1.0"
