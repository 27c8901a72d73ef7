"""The web app's words, in Vietnamese (the default) and English (?lang=en).

One concept, one word, as in the project glossary: cụm loa, thông báo khẩn, phát ngay,
dừng phát, đang phát, đã phát xong, bị ngắt, mất kết nối, nhật ký thao tác, phê duyệt.
"""

from __future__ import annotations

from typing import Literal

Lang = Literal["vi", "en"]
LANGS: tuple[Lang, ...] = ("vi", "en")

TEXT: dict[str, dict[Lang, str]] = {
    "app": {"vi": "Loa — Hệ thống quản lý truyền thanh", "en": "Loa — broadcast controller"},
    "sign_in": {"vi": "Đăng nhập", "en": "Sign in"},
    "sign_out": {"vi": "Đăng xuất", "en": "Sign out"},
    "user_name": {"vi": "Tên đăng nhập", "en": "User name"},
    "password": {"vi": "Mật khẩu", "en": "Password"},
    "bad_login": {
        "vi": "Sai tên đăng nhập hoặc mật khẩu.", "en": "Wrong user name or password.",
    },
    "too_many": {
        "vi": "Đăng nhập sai quá nhiều lần. Thử lại sau {s} giây.",
        "en": "Too many failed sign-ins. Try again in {s} seconds.",
    },
    "too_large": {
        "vi": "Nội dung gửi lên quá lớn (tối đa {size}).",
        "en": "What was sent is too large (at most {size}).",
    },
    "csrf": {
        "vi": "Phiên làm việc đã hết hạn hoặc biểu mẫu không hợp lệ. Tải lại trang và thử lại.",
        "en": "Your session expired or the form is not valid. Reload the page and try again.",
    },
    "new_urgent": {"vi": "Thông báo khẩn mới", "en": "New urgent announcement"},
    "history": {"vi": "Thông báo đã gửi", "en": "Sent announcements"},
    "audit": {"vi": "Nhật ký thao tác", "en": "Audit log"},
    "approvals": {"vi": "Phê duyệt", "en": "Approvals"},
    "enrolments": {"vi": "Đăng ký thiết bị", "en": "Device enrolment"},
    "enrol_help": {
        "vi": "Thiết bị thu mới xin đăng ký định danh (khóa) của mình. Chỉ duyệt khi kỹ thuật "
              "viên xác nhận mã khóa hiện trên thiết bị (lệnh loa-agent check).",
        "en": "New receiver boxes ask to have their identity (key) registered. Approve only "
              "when the technician confirms the key shown on the box (loa-agent check).",
    },
    "key": {"vi": "Mã khóa", "en": "Key"},
    "asked_at": {"vi": "Lúc xin", "en": "Asked at"},
    "replaces_box": {"vi": "thay thiết bị cũ", "en": "replaces the old box"},
    "reject": {"vi": "Từ chối", "en": "Reject"},
    "registered_n": {
        "vi": "{n} trên {total} cụm loa đã đăng ký thiết bị.",
        "en": "{n} of {total} clusters registered.",
    },
    "not_registered": {"vi": "Chưa đăng ký", "en": "Not registered"},
    "your_scope": {"vi": "Phạm vi của bạn", "en": "Your area"},
    "targets": {"vi": "Nơi phát", "en": "Targets"},
    "targets_help": {
        "vi": "Chọn cả xã, một số ấp hoặc một số cụm loa.",
        "en": "Choose the whole commune, some villages or some clusters.",
    },
    "level": {"vi": "Mức", "en": "Level"},
    "level_priority": {"vi": "Ưu tiên", "en": "Priority"},
    "level_emergency": {"vi": "Khẩn cấp", "en": "Emergency"},
    "level_normal": {"vi": "Thông thường", "en": "Normal"},
    "content": {"vi": "Nội dung", "en": "Content"},
    "text": {"vi": "Văn bản (máy đọc)", "en": "Text (spoken by the machine)"},
    "text_help": {
        "vi": "Gõ nội dung; hệ thống chuyển văn bản thành giọng nói.",
        "en": "Type the message; it is turned into speech.",
    },
    "no_tts": {
        "vi": "Máy chủ chưa có bộ chuyển văn bản thành giọng nói: hãy tải tệp âm thanh lên "
              "hoặc ghi âm.",
        "en": "No text-to-speech engine on the controller: upload or record audio instead.",
    },
    "audio_file": {"vi": "Hoặc tệp âm thanh", "en": "Or an audio file"},
    "record": {"vi": "Ghi âm", "en": "Record"},
    "stop_record": {"vi": "Dừng ghi âm", "en": "Stop recording"},
    "recorded": {"vi": "Đã ghi âm — sẽ gửi bản ghi này.", "en": "Recorded — this will be sent."},
    "repeat": {"vi": "Số lần phát", "en": "Times to play"},
    "gap": {"vi": "Nghỉ giữa các lần (giây)", "en": "Gap between (seconds)"},
    "title": {"vi": "Tiêu đề (không bắt buộc)", "en": "Title (optional)"},
    "send": {"vi": "Phát ngay", "en": "Send now"},
    "stop": {"vi": "Dừng phát", "en": "Stop"},
    "stopped_by": {"vi": "Đã dừng bởi {u} lúc {t}", "en": "Stopped by {u} at {t}"},
    "cluster": {"vi": "Cụm loa", "en": "Cluster"},
    "commune": {"vi": "Xã", "en": "Commune"},
    "status": {"vi": "Trạng thái", "en": "Status"},
    "reason": {"vi": "Lý do", "en": "Reason"},
    "when": {"vi": "Thời điểm", "en": "When"},
    "sent_by": {"vi": "Người gửi", "en": "Sent by"},
    "all_played": {"vi": "Tất cả cụm loa đã phát xong.", "en": "Every cluster played it."},
    "forbidden": {
        "vi": "Không được phép: {t} nằm ngoài phạm vi của bạn ({s}). Không có gì được gửi.",
        "en": "Not allowed: {t} is outside your area ({s}). Nothing was sent.",
    },
    "not_found": {"vi": "Không tìm thấy.", "en": "Not found."},
    "manager_only": {
        "vi": "Chỉ cán bộ quản lý phát thanh được xem trang này.",
        "en": "Only broadcast managers may see this page.",
    },
    "download_csv": {"vi": "Tải về CSV", "en": "Download CSV"},
    "action": {"vi": "Thao tác", "en": "Action"},
    "outcome": {"vi": "Kết quả", "en": "Outcome"},
    "pending": {"vi": "Chờ duyệt", "en": "Pending"},
    "cap_not_aired": {
        "vi": "Cảnh báo CAP chưa phát (7 ngày qua)", "en": "CAP alerts not aired (last 7 days)",
    },
    "cap_held_until": {"vi": "chờ đến {at} mới phát", "en": "held until {at}"},
    "cap_expired_at": {
        "vi": "đã hết hạn lúc {at}, không phát", "en": "expired at {at}, not aired",
    },
    "cap_expired": {"vi": "đã hết hạn, không phát", "en": "expired, not aired"},
    "cap_refused": {
        "vi": "bị từ chối (người gửi hoặc chữ ký không hợp lệ)",
        "en": "refused (sender or signature not accepted)",
    },
    "approved": {"vi": "Đã duyệt", "en": "Approved"},
    "approve": {"vi": "Duyệt", "en": "Approve"},
    "nothing_pending": {
        "vi": "Không có chương trình nào chờ duyệt.", "en": "Nothing is waiting for approval.",
    },
    "none_yet": {"vi": "Chưa có.", "en": "None yet."},
    "st_sent": {"vi": "đã gửi", "en": "sent"},
    "st_offline": {"vi": "mất kết nối", "en": "offline"},
    "st_received": {"vi": "đã nhận lệnh", "en": "received"},
    "st_delivered": {"vi": "đã nhận nội dung", "en": "delivered"},
    "st_playing": {"vi": "đang phát", "en": "playing"},
    "st_finished": {"vi": "đã phát xong", "en": "finished"},
    "st_interrupted": {"vi": "bị ngắt", "en": "interrupted"},
    "st_missed": {"vi": "bị lỡ", "en": "missed"},
    "st_failed": {"vi": "lỗi", "en": "failed"},
    "kind_province": {"vi": "tỉnh", "en": "province"},
    "kind_district": {"vi": "huyện", "en": "district"},
    "kind_commune": {"vi": "xã", "en": "commune"},
    "kind_village": {"vi": "ấp", "en": "village"},
    "kind_cluster": {"vi": "cụm loa", "en": "cluster"},
    "clusters_n": {"vi": "{n} cụm loa", "en": "{n} clusters"},
    "language": {"vi": "English", "en": "Tiếng Việt"},
    "listen": {"vi": "Nghe thử", "en": "Listen first"},
    "listen_busy": {"vi": "Đang chuẩn bị âm thanh…", "en": "Preparing the audio…"},
    "listen_help": {
        "vi": "Nghe trước trên máy này; chưa phát ra loa.",
        "en": "Hear it here first; nothing goes to the speakers.",
    },
    "listen_bulletin": {"vi": "Nghe bản tin {n}", "en": "Listen to bulletin {n}"},
    "profile_horn": {"vi": "loa nén ngoài trời", "en": "outdoor horn speakers"},
    "profile_full-range": {"vi": "loa toàn dải trong nhà", "en": "indoor full-range speakers"},
}


def lang_in(asked: str | None, remembered: str | None) -> Lang:
    """The page's language: asked for (?lang=), else remembered (cookie), else Vietnamese."""
    wanted = asked or remembered or "vi"
    return "en" if wanted == "en" else "vi"


def t(lang: Lang, key: str, **values: object) -> str:
    entry = TEXT.get(key)
    if entry is None:
        return key
    text = entry.get(lang) or entry["vi"]
    return text.format(**values) if values else text
