"""Masking of personal data for callers without the right to see it (``pii:read``)."""

from __future__ import annotations


def mask_phone(phone: str | None) -> str | None:
    """``13812341234`` → ``138****1234``; short numbers keep only their last 2 digits."""
    if not phone:
        return phone
    if len(phone) >= 7:
        return f"{phone[:3]}****{phone[-4:]}"
    return "*" * (len(phone) - 2) + phone[-2:] if len(phone) > 2 else "*" * len(phone)


def mask_name(name: str | None) -> str | None:
    """``张三丰`` → ``张**``: the first character, one star for each other."""
    if not name:
        return name
    return name[0] + "*" * (len(name) - 1)


def mask_id_number(id_number: str | None) -> str | None:
    """``110101199003074518`` → ``1****************8``: first and last character kept."""
    if not id_number:
        return id_number
    if len(id_number) <= 2:
        return "*" * len(id_number)
    return id_number[0] + "*" * (len(id_number) - 2) + id_number[-1]


def mask_bank_card(card: str | None) -> str | None:
    """``6222021234567890123`` → ``尾号0123`` (the last four digits)."""
    if not card:
        return card
    return f"尾号{card[-4:]}"


def mask_email(email: str | None) -> str | None:
    """``alice@example.com`` → ``a****@example.com``."""
    if not email or "@" not in email:
        return email
    local, _, domain = email.partition("@")
    return f"{local[:1]}****@{domain}"


def mask_account(account: str | None) -> str | None:
    """An openid or Alipay account: the first 3 and last 3 characters (e-mail-like accounts
    mask as e-mails, phone-like ones as phones)."""
    if not account:
        return account
    if "@" in account:
        return mask_email(account)
    if account.isdigit():
        return mask_phone(account)
    if len(account) <= 6:
        return account[:1] + "*" * (len(account) - 1)
    return f"{account[:3]}****{account[-3:]}"
