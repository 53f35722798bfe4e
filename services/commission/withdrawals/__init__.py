"""Withdrawals, payee details, income tax withholding and payouts (ARCHITECTURE §6, issue 6).

A subpackage of the commission service because payouts move money out of the ledger the
commission service keeps; see docs/withdrawals.md for the flows.
"""
