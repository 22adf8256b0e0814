"""The management API, the operator's and grid workers' pages, and the gateway's health."""
