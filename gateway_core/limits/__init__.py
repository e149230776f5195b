"""Token limits: which rules apply to a request, their windows, and how long until tokens free up."""
