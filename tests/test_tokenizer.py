"""The offline Chinese tokenizer: the shipped vocab, real Chinese text to real ids."""

import hashlib

from r2d2.tokenizer import default_vocab_path, load_tokenizer, tokenize

VOCAB_SHA256 = "45bbac6b341c319adc98a532532882e91a9cefc0329aa57bac9ae761c27b291c"


def test_vocab_is_the_standard_chinese_bert_vocab():
    data = default_vocab_path().read_bytes()
    assert hashlib.sha256(data).hexdigest() == VOCAB_SHA256
    tok = load_tokenizer()
    assert len(tok) == 21128
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (0, 100, 101, 102, 103)


def test_real_chinese_text_maps_to_non_unk_ids():
    texts = ["一只红色的圆形位于图片左上角", "北京天安门广场的夜景", "蓝底白字的交通标志牌"]
    enc = tokenize(texts, max_len=64)
    ids = enc["input_ids"]
    real = ids[enc["attention_mask"].bool()]
    assert (real != 100).all(), "a Chinese character became [UNK]: was the vocab passed as vocab_file=?"
    # Chinese is split per character: [CLS] + one id per character + [SEP].
    assert int(enc["attention_mask"][0].sum()) == len(texts[0]) + 2
    tok = load_tokenizer()
    assert tok.convert_ids_to_tokens(ids[1, 1:3].tolist()) == ["北", "京"]


def test_padding_is_to_the_longest_and_truncation_to_max_len():
    enc = tokenize(["短", "这是一个比较长的句子" * 10], max_len=16)
    assert enc["input_ids"].shape == (2, 16)
    enc = tokenize(["短", "稍长一点"], max_len=64)
    assert enc["input_ids"].shape == (2, 6)
