from libs.common.masking import (
    mask_account,
    mask_bank_card,
    mask_email,
    mask_id_number,
    mask_name,
    mask_phone,
)


def test_masks_match_the_documented_shapes() -> None:
    assert mask_phone("13812341234") == "138****1234"
    assert mask_name("张三") == "张*"
    assert mask_name("张三丰") == "张**"
    assert mask_id_number("110101199003074518") == "1****************8"
    assert mask_bank_card("6222021234567890123") == "尾号0123"
    assert mask_email("alice@example.com") == "a****@example.com"
    assert mask_account("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o") == "oUp****S6o"
    assert mask_phone(None) is None and mask_name("") == ""
