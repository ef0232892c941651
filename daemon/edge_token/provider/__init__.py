"""The OAuth2 provider: the token request, the JWKS cache, token verification."""
