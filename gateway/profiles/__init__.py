"""Regional policy profiles: each region's rule knobs and citations as a TOML file.

The policy documents of the regions disagree (which sites a suspension reaches, when it lifts,
what the emergency exemption covers); an agency deploys the gateway with its own region's
profile. ``load`` reads and validates one (``gateway.profiles.loading``); the shipped ones are
package data under ``data/``. Nothing is imported here, so ``gateway.rules`` can use
``gateway.profiles.bans`` without a cycle.
"""
