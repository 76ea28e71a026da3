"""The dashboard: sign-in (OpenID Connect, GitHub OAuth), server-rendered pages and Server-Sent Events.

A channel like Slack and the API: every page and form calls the same core services, as the signed-in
person's subject, with channel "web".
"""
