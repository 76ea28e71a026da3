"""The dashboard: sign-in (OpenID Connect, GitHub OAuth), server-rendered pages and Server-Sent Events.

A channel like Slack and the API: every page and form calls the same core services, as the signed-in
person's subject, with channel "web".
"""

import warnings

import authlib.deprecate

# Authlib 1.9 deprecates its httpx client in favour of an `httpx2` package that is not available to us;
# the httpx client works (it is what the tests sign in with), so its import-time warning is only noise.
# Added after authlib.deprecate's own "always" filter, so ours comes first.
warnings.filterwarnings(
    "ignore", message="The httpx module is deprecated", category=authlib.deprecate.AuthlibDeprecationWarning
)
