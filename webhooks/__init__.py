"""The GitHub channel: the webhook route, its typed event table, and the notifier that reports
deploys back to GitHub (Deployments, statuses, PR comments).  Only this package imports PyGithub."""
