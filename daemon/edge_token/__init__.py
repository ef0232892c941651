"""edge-token: keeps a verified OAuth2 client-credentials access token fresh on disk."""

__version__ = "0.1.0"
