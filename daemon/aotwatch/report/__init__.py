"""Reports from archives: the terminal summary, the HTML page and the Perfetto trace."""
