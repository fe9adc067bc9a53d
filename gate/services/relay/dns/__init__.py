"""The relay's DNS, for nodes' ACME DNS-01 challenges (spec §6.4): one small interface
(`backend`: publish a TXT record, get a handle, remove it) with a module per backend
(`challtestsrv`, for tests and private CAs; `cloudflare`), and the records the relay
has published for nodes, with their rate limit and every rule that removes them
(`challenges`)."""
