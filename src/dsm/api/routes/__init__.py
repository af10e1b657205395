"""The HTTP API's handlers, grouped by what they serve: `keys` (values, listing, watch), `cluster` (members and
topology), `health` (liveness and readiness). Each group is a class built once per app by
`dsm.api.http.create_app` with the collaborators it needs; the handlers are its methods."""
